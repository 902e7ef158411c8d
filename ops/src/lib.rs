//! flowseg-ops: the built-in ops, one file each, grouped by family (augment, forward, ema, mix,
//! fuse, loss, optim, data, eval). Empty until the graph-engine issue defines the `Op` trait; each
//! op will then be one file plus one line in `register_builtin_ops`.

pub use flowseg_engine as engine;
