//! Opening what a graph file describes: its `data:` section's source, looked up in the
//! registry ([`open_source`]), and the whole file read up to that opened source with the
//! models' default class count filled in ([`open_graph`]). FS0113.
//!
//! Not here: the `DataSource` / `Dataset` traits (`data.rs`), the IR (`ir.rs`).

use crate::data::Dataset;
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, Loc, Node};

/// FS0113: the `data:` section names no known source, its params are wrong, or it failed to open.
pub const BAD_DATA: &str = "FS0113";

/// Opens the source a graph's `data:` section describes.
pub fn open_source(spec: &GraphSpec, registry: &Registry) -> Result<Box<dyn Dataset>, GraphError> {
    let Some(data) = &spec.data else {
        // At the top of the file: the section is missing from the root mapping.
        return Err(GraphError::new(
            BAD_DATA,
            "the graph has no `data:` section",
            Loc { line: 1, col: 1 },
        )
        .help("add e.g. `data: { source: shapes, batch: 8, size: 32 }`"));
    };
    let names = || {
        let v: Vec<String> = registry
            .data_sources()
            .map(|d| format!("`{}`", d.name()))
            .collect();
        format!("data sources: {}", v.join(", "))
    };
    let Some(name_node) = data.get("source") else {
        return Err(GraphError::new(BAD_DATA, "`data:` has no `source:`", data.loc).help(names()));
    };
    let Some(name) = name_node.as_str() else {
        return Err(
            GraphError::new(BAD_DATA, "`source:` must be a name", name_node.loc).help(names()),
        );
    };
    let Some(def) = registry.data(name) else {
        return Err(GraphError::new(
            BAD_DATA,
            format!("unknown data source `{name}`"),
            name_node.loc,
        )
        .help(names()));
    };
    match def.open(data, spec.train.seed) {
        Err(e) => {
            let loc = if e.loc.is_located() { e.loc } else { data.loc };
            Err(GraphError::new(
                BAD_DATA,
                format!("params of data source `{name}`: {}", e.message),
                loc,
            ))
        }
        Ok(Err(e)) => Err(GraphError::new(
            BAD_DATA,
            format!("data source `{name}`: {e}"),
            data.loc,
        )),
        Ok(Ok(source)) => Ok(source),
    }
}

/// A graph file read up to its opened data source: the text parsed with the `--set`
/// overrides, the source opened, and models that leave `classes` out given the source's class
/// count ([`crate::spec::default_model_classes`]). Returns the spec, the resolved tree (what a
/// run keeps as its graph.yaml) and the source.
pub fn open_graph(
    text: &str,
    overrides: &[String],
    registry: &Registry,
) -> Result<(GraphSpec, Node, Box<dyn Dataset>), Vec<GraphError>> {
    let (spec, mut root) = crate::spec::parse_graph(text, overrides)?;
    let source = open_source(&spec, registry).map_err(|e| vec![e])?;
    let spec = match source.classes().len() {
        0 => spec,
        n => crate::spec::default_model_classes(&mut root, n)?,
    };
    Ok((spec, root, source))
}
