//! shadow: the debug switches of a device run. [`Checked`] wraps any [`Device`] and, per
//! [`DebugChecks`]:
//!
//! * `sync_each_op` (`flowseg run --sync-each-op`): waits for every launch before the next one,
//!   so an asynchronous fault (an illegal address, a failed launch) is reported at the node that
//!   caused it instead of at the end of the step;
//! * `validate` (`--validate-cpu`): reads the node's inputs back from the device before each
//!   launch and its outputs after, runs the node's CPU reference (`Op::cpu`, or `cpu_in_place` on a copy of
//!   the state it updates, read before the launch) on those same inputs, and compares element
//!   by element within a [`Tolerance`]. Each node is judged on its own inputs, so a difference
//!   does not propagate: the first [`ExecError::Diverged`] names the node whose device code
//!   disagrees with its CPU code, its output, the first differing element and the largest
//!   difference.
//!
//! Both are slow (a host round trip per node) and change no value the run computes.
//!
//! Not here: the devices themselves (`exec.rs`, `cuda_exec.rs`), how values are read back
//! ([`Device::read_back`]).

use crate::device::{Device, ExecError, Launch, Operand, Region};
use crate::graph::{ExecCx, Graph, ValueRef};
use crate::tensor::{Tensor, TensorSpec};

/// How far a device value may be from the CPU's: |device − cpu| ≤ `atol` + `rtol`·|cpu| per
/// element (integers must be equal; NaN matches only NaN, ±∞ only itself).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f32,
    /// Relative part, of the CPU's value.
    pub rtol: f32,
}

impl Default for Tolerance {
    /// 1e-4 + 1e-3·|cpu|: a float32 sum of thousands of terms in another order (a GPU's
    /// reduction tree, a convolution's other tiling) stays well inside it; a wrong index,
    /// padding or term does not.
    fn default() -> Self {
        Tolerance {
            atol: 1e-4,
            rtol: 1e-3,
        }
    }
}

/// The debug switches of a run (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DebugChecks {
    /// Wait for each launch to finish before the next.
    pub sync_each_op: bool,
    /// Shadow each launch on the CPU and compare, within this tolerance.
    pub validate: Option<Tolerance>,
}

impl DebugChecks {
    /// Whether any switch is on.
    pub fn any(&self) -> bool {
        self.sync_each_op || self.validate.is_some()
    }
}

/// `inner` with `checks` applied to every launch of `graph`'s plan; `seed` and `iteration` are
/// the run's (the CPU reference draws the node's random numbers from the same stream).
pub struct Checked<'a, D: Device + ?Sized> {
    inner: &'a mut D,
    graph: &'a Graph,
    seed: u64,
    iteration: u64,
    checks: DebugChecks,
}

impl<'a, D: Device + ?Sized> Checked<'a, D> {
    /// Wraps `inner`.
    pub fn new(
        inner: &'a mut D,
        graph: &'a Graph,
        seed: u64,
        iteration: u64,
        checks: DebugChecks,
    ) -> Self {
        Checked {
            inner,
            graph,
            seed,
            iteration,
            checks,
        }
    }
}

impl<D: Device + ?Sized> Device for Checked<'_, D> {
    fn launch(&mut self, l: &Launch) -> Result<(), ExecError> {
        let node = (self.graph.nodes.get(l.node))
            .ok_or_else(|| ExecError::Plan(format!("no node {}", l.node)))?;
        let at_node = |e: ExecError| match e {
            ExecError::Device(m) => ExecError::Device(format!(
                "after node `{}` ({}): {m}",
                node.name.value,
                node.op.name()
            )),
            other => other,
        };
        // A failure surfacing at the sync before this node's launch came from an earlier one.
        let before_node = |e: ExecError| match e {
            ExecError::Device(m) => ExecError::Device(format!(
                "before node `{}` ({}), from an earlier launch: {m}",
                node.name.value,
                node.op.name()
            )),
            other => other,
        };
        let Some(tol) = self.checks.validate else {
            self.inner.launch(l)?;
            if self.checks.sync_each_op {
                self.inner.synchronize().map_err(at_node)?;
            }
            return Ok(());
        };
        // The node's inputs, and the state it updates in place, as they are before it runs (an
        // output may take the buffer of an input that dies at this node).
        self.inner.synchronize().map_err(before_node)?;
        let mut inputs: Vec<Option<Tensor>> = Vec::with_capacity(l.inputs.len());
        let mut before: Vec<(String, Tensor)> = Vec::new();
        for (k, op) in l.inputs.iter().enumerate() {
            inputs.push(match op {
                Operand::Absent => None,
                Operand::StateInPlace(name) => {
                    let spec = self.state_spec(name)?;
                    before.push((name.clone(), self.inner.read_back(op, &spec)?));
                    None
                }
                _ => {
                    let src = node.inputs.get(k).and_then(Option::as_ref);
                    let spec = src.and_then(|s| self.graph.spec_of(s)).ok_or_else(|| {
                        ExecError::Plan(format!("input {k} of `{}` has no spec", node.name.value))
                    })?;
                    Some(self.inner.read_back(op, spec)?)
                }
            });
        }
        self.inner.launch(l)?;
        self.inner.synchronize().map_err(at_node)?;
        let mut device_out = Vec::with_capacity(l.outputs.len());
        for (port, (spec, region)) in node.outputs.iter().zip(&l.outputs).enumerate() {
            let op = output_operand(l.node, port, *region);
            device_out.push(self.inner.read_back(&op, spec)?);
        }
        // The CPU reference on the device's inputs.
        let cx = ExecCx::for_node(self.seed, self.iteration, &node.name.value);
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let mut cpu_out: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
        let mut cpu_state: Vec<Tensor> = before.iter().map(|(_, t)| t.clone()).collect();
        let result = if before.is_empty() {
            node.op.cpu(&cx, &refs, &mut cpu_out)
        } else {
            let mut st: Vec<&mut Tensor> = cpu_state.iter_mut().collect();
            node.op.cpu_in_place(&cx, &refs, &mut st, &mut cpu_out)
        };
        result.map_err(|source| ExecError::Node {
            node: node.name.value.clone(),
            op: node.op.name(),
            source,
        })?;
        let diverged = |what: String, detail: String| ExecError::Diverged {
            node: node.name.value.clone(),
            op: node.op.name(),
            what,
            detail,
        };
        for (port, (dev, cpu)) in device_out.iter().zip(&cpu_out).enumerate() {
            if let Some(d) = first_difference(dev, cpu, tol) {
                return Err(diverged(format!("output {port} ({})", cpu.spec()), d));
            }
        }
        for ((name, _), cpu) in before.iter().zip(&cpu_state) {
            let spec = cpu.spec().clone();
            let dev = self
                .inner
                .read_back(&Operand::StateInPlace(name.clone()), &spec)?;
            if let Some(d) = first_difference(&dev, cpu, tol) {
                return Err(diverged(format!("state `{name}` after the update"), d));
            }
        }
        Ok(())
    }

    fn record(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        self.inner.record(stream, event)
    }

    fn wait(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        self.inner.wait(stream, event)
    }

    fn free(&mut self, stream: usize, region: Region) -> Result<(), ExecError> {
        self.inner.free(stream, region)
    }

    fn read_back(&mut self, operand: &Operand, spec: &TensorSpec) -> Result<Tensor, ExecError> {
        self.inner.read_back(operand, spec)
    }

    fn synchronize(&mut self) -> Result<(), ExecError> {
        self.inner.synchronize()
    }
}

impl<D: Device + ?Sized> Checked<'_, D> {
    fn state_spec(&self, name: &str) -> Result<TensorSpec, ExecError> {
        self.graph
            .spec_of(&ValueRef::State(name.to_owned()))
            .cloned()
            .ok_or_else(|| ExecError::Plan(format!("no state tensor `{name}` in the graph")))
    }
}

/// Output `port` of node `node`, written to `region`, as an operand to read back.
fn output_operand(node: usize, port: usize, region: Region) -> Operand {
    Operand::Value { node, port, region }
}

/// Where `device` and `cpu` (the same spec) differ beyond `tol`, in words — the first such
/// element, how many there are and the largest difference — or `None` when they agree.
pub fn first_difference(device: &Tensor, cpu: &Tensor, tol: Tolerance) -> Option<String> {
    if device.spec() != cpu.spec() {
        return Some(format!(
            "the device's value is {}, the CPU's {}",
            device.spec(),
            cpu.spec()
        ));
    }
    match (device.f32(), cpu.f32(), device.i32(), cpu.i32()) {
        (Some(d), Some(c), _, _) => {
            let bad = |&(_, (&d, &c)): &(usize, (&f32, &f32))| !close(d, c, tol);
            let mut wrong = d.iter().zip(c).enumerate().filter(bad);
            let (first, (fd, fc)) = wrong.next()?;
            let mut count = 1usize;
            let mut worst = (first, (fd - fc).abs());
            for (i, (&d, &c)) in wrong {
                count += 1;
                let diff = (d - c).abs();
                if diff > worst.1 || diff.is_nan() && !worst.1.is_nan() {
                    worst = (i, diff);
                }
            }
            Some(format!(
                "element {first} of {}: device {fd:e}, CPU {fc:e} (allowed |Δ| ≤ {:e} + {:e}·|CPU|); \
                 {count} elements differ, the largest |Δ| {:e} at element {}",
                d.len(),
                tol.atol,
                tol.rtol,
                worst.1,
                worst.0
            ))
        }
        (_, _, Some(d), Some(c)) => {
            let mut wrong = d.iter().zip(c).enumerate().filter(|(_, (d, c))| d != c);
            let (first, (fd, fc)) = wrong.next()?;
            let count = 1 + wrong.count();
            Some(format!(
                "element {first} of {}: device {fd}, CPU {fc}; {count} elements differ",
                d.len()
            ))
        }
        _ => Some("a tensor without data".into()),
    }
}

/// One element within tolerance.
fn close(d: f32, c: f32, tol: Tolerance) -> bool {
    if d.is_nan() || c.is_nan() {
        return d.is_nan() && c.is_nan();
    }
    // Equal infinities (and exact equality) pass; inf − inf would be NaN below.
    d == c || (d - c).abs() <= tol.atol + tol.rtol * c.abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[f32]) -> Tensor {
        Tensor::from_f32(&[v.len()], v.to_vec()).expect("shape")
    }

    #[test]
    fn equal_values_and_values_within_tolerance_pass() {
        let tol = Tolerance::default();
        assert_eq!(
            first_difference(&f(&[1.0, -2.0]), &f(&[1.0, -2.0]), tol),
            None
        );
        // 1e-4 + 1e-3 · 1000 = 1.0001 allowed at 1000.
        assert_eq!(first_difference(&f(&[1000.9]), &f(&[1000.0]), tol), None);
        assert_eq!(
            first_difference(
                &f(&[f32::NAN, f32::INFINITY]),
                &f(&[f32::NAN, f32::INFINITY]),
                tol
            ),
            None
        );
    }

    #[test]
    fn the_first_and_the_largest_difference_are_named() {
        let tol = Tolerance::default();
        let d = first_difference(&f(&[0.0, 0.5, 1.0, 4.0]), &f(&[0.0, 0.0, 1.0, 1.0]), tol)
            .expect("differs");
        assert!(d.starts_with("element 1 of 4: device 5e-1, CPU 0e0"), "{d}");
        assert!(
            d.contains("2 elements differ, the largest |Δ| 3e0 at element 3"),
            "{d}"
        );
        let d = first_difference(&f(&[f32::NAN]), &f(&[0.0]), tol).expect("NaN differs");
        assert!(d.contains("device NaN"), "{d}");
        let i = |v: &[i32]| Tensor::from_i32(&[v.len()], v.to_vec()).expect("shape");
        let d = first_difference(&i(&[1, 2, 3]), &i(&[1, 0, 0]), tol).expect("differs");
        assert_eq!(d, "element 1 of 3: device 2, CPU 0; 2 elements differ");
        let d = first_difference(&f(&[1.0]), &f(&[1.0, 2.0]), tol).expect("specs differ");
        assert!(d.contains("the device's value is"), "{d}");
    }
}
