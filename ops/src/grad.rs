//! Small helpers for the ops' vector-Jacobian rules ([`flowseg_engine::Op::vjp`]): fetch a
//! required forward input or an output gradient, take apart what [`Vjp::emit`] returns, and
//! refuse a gradient into an input an op holds constant, as `Result`s whose messages name the
//! port, so a rule reads as a straight line of `?`s.
//!
//! Not here: the backward ops themselves (each lives beside its forward, in the forward's file).

use flowseg_engine::graph::ValueRef;
use flowseg_engine::op::Vjp;
use flowseg_engine::Port;

fn port_name(ports: &[Port], i: usize) -> &'static str {
    ports.get(i).map_or("?", |p| p.name)
}

/// Forward input `i` of the node being differentiated, which must be connected.
pub(crate) fn input(g: &Vjp<'_>, inputs: &[Port], i: usize) -> Result<ValueRef, String> {
    g.input(i)
        .ok_or_else(|| format!("`{}` is not connected", port_name(inputs, i)))
}

/// The gradient flowing into forward output `k`.
pub(crate) fn grad_output(g: &Vjp<'_>, outputs: &[Port], k: usize) -> Result<ValueRef, String> {
    g.grad_output(k)
        .ok_or_else(|| format!("no gradient reached output `{}`", port_name(outputs, k)))
}

/// The `N` outputs of an emitted backward node, in its port order.
pub(crate) fn outputs<const N: usize>(emitted: Vec<ValueRef>) -> Result<[ValueRef; N], String> {
    let got = emitted.len();
    <[ValueRef; N]>::try_from(emitted)
        .map_err(|_| format!("a backward node produced {got} outputs, expected {N}"))
}

/// Refuses a gradient into forward input `i`, which op `op` treats as a constant (`role`, e.g.
/// "the per-pixel weight"): when that input depends on trainable state, dropping its gradient
/// silently would train the wrong objective, so the user is told to write `detach`. `Ok` when
/// the input needs no gradient.
pub(crate) fn constant_input(
    g: &Vjp<'_>,
    inputs: &[Port],
    i: usize,
    op: &str,
    role: &str,
) -> Result<(), String> {
    if !g.needs_grad(i) {
        return Ok(());
    }
    Err(format!(
        "`{}` depends on trainable state, but {op} treats {role} as a constant and computes no \
         gradient for it; pass it through a `detach` node to make that explicit",
        port_name(inputs, i)
    ))
}
