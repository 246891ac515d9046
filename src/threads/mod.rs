//! Threads: the fixed pools of workers, the gate that admits some of them at once, whether
//! they fit the system's limits, and the stack pages an idle one gives back.

pub mod budget;
pub mod cgroup;
pub mod gate;
pub mod pool;
pub mod stack;
