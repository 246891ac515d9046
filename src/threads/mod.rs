//! Threads: the fixed pools of workers, whether they fit the system's limits, and the stack
//! pages an idle one gives back.

pub mod budget;
pub mod pool;
pub mod stack;
