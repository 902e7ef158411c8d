//! The second pass of [`super::build`]: a topological order of the nodes over data and
//! `after:` edges, the smallest file index first where the order is free, so a graph's nodes
//! run in the order they were written unless data says otherwise. A cycle is FS0106, reported
//! with its nodes in order.
//!
//! Hand-written rather than `petgraph::algo::toposort`: that one orders by depth-first search,
//! not by file order, and reports one node of a cycle where users need the whole loop.
//!
//! Not here: the order of the backward nodes (autodiff appends them in reverse order).

use super::{Pending, Ref, CYCLE};
use crate::spec::{GraphError, GraphSpec};
use std::collections::BTreeSet;

/// FS0106 naming the nodes of `cycle` (file indices) in order.
pub(super) fn cycle_error(spec: &GraphSpec, cycle: &[usize]) -> GraphError {
    let names: Vec<&str> = cycle.iter().map(|&i| spec.nodes[i].name.as_str()).collect();
    let first = &spec.nodes[cycle[0]];
    GraphError::new(
        CYCLE,
        format!("cycle through {}", names.join(" → ")),
        first.name.loc,
    )
    .in_node(&first.name)
    .help("a node cannot depend on its own output; break the loop or drop an `after:`")
}

/// Kahn's algorithm over data and `after` edges, smallest file index first. `Err` holds the
/// nodes of one cycle, in order.
pub(super) fn topo_order(pending: &[Option<Pending>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = pending.len();
    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (i, p) in pending.iter().enumerate() {
        let Some(p) = p else { continue };
        for (r, _) in p.inputs.iter().flatten() {
            if let Ref::Node(j, _) = r {
                preds[i].insert(*j);
            }
        }
        preds[i].extend(p.after.iter().copied());
    }
    let mut indeg: Vec<usize> = preds.iter().map(BTreeSet::len).collect();
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ps) in preds.iter().enumerate() {
        for &j in ps {
            succs[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &s in &succs[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.insert(s);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk predecessors among the unfinished nodes until one repeats: that loop is a cycle.
    let left: BTreeSet<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    let mut path = Vec::new();
    let mut cur = *left.iter().next().unwrap_or(&0);
    loop {
        if let Some(pos) = path.iter().position(|&x| x == cur) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        path.push(cur);
        match preds[cur].iter().find(|p| left.contains(p)) {
            Some(&p) => cur = p,
            None => return Err(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, Pending, Ref};
    use super::topo_order;
    use crate::spec::{Loc, Sp};

    /// A node reading the first output of each of `inputs` and ordered after `after`.
    fn node(i: usize, inputs: &[usize], after: &[usize]) -> Option<Pending> {
        Some(Pending {
            file_index: i,
            name: Sp::detached(format!("n{i}")),
            kind: Kind::Grad,
            inputs: inputs
                .iter()
                .map(|&j| Some((Ref::Node(j, 0), Loc::NONE)))
                .collect(),
            after: after.to_vec(),
            stream: None,
            broken: false,
        })
    }

    #[test]
    fn file_order_where_free_data_order_where_not() {
        // 0 reads 2; 1 is free; 3 runs after 1.
        let p = vec![
            node(0, &[2], &[]),
            node(1, &[], &[]),
            node(2, &[], &[]),
            node(3, &[], &[1]),
        ];
        assert_eq!(topo_order(&p).unwrap(), [1, 2, 0, 3]);
    }

    #[test]
    fn a_cycle_is_reported_whole_and_in_order() {
        // 0 → 1 → 2 → 0 (each reads the previous), 3 hangs off it.
        let p = vec![
            node(0, &[2], &[]),
            node(1, &[0], &[]),
            node(2, &[1], &[]),
            node(3, &[2], &[]),
        ];
        let cycle = topo_order(&p).unwrap_err();
        assert_eq!(cycle.len(), 3, "{cycle:?}");
        // In data order: each node reads the one before it.
        for w in 0..3 {
            let (a, b) = (cycle[w], cycle[(w + 1) % 3]);
            assert_eq!(b, (a + 1) % 3, "{cycle:?}");
        }
    }

    #[test]
    fn an_after_edge_can_close_a_cycle() {
        let p = vec![node(0, &[], &[1]), node(1, &[0], &[])];
        assert_eq!(topo_order(&p).unwrap_err().len(), 2);
    }
}
