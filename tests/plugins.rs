//! End to end through the CLI entry point: a plugin's op shows up in `flowseg ops` (text and
//! Markdown), and a plugin whose op name is already taken is refused with exit code 2.

use flowseg::{run_cli, Plugin, Registry, RegistryError};
use flowseg_engine::op::io;
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use std::process::ExitCode;

/// A plugin op: y = 2x.
struct Double;

impl Op for Double {
    const NAME: &'static str = "double_it";
    const SUMMARY: &'static str = "y = 2x element-wise (a test plugin's op)";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32, any shape"),
        Port::opt("unused", "f32, ignored (an optional input)"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the shape of `x`")];
    const EXAMPLE: &'static str = "name: twice\nop: double_it\ninputs: { x: conv.y }\n";
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        for (o, v) in y.iter_mut().zip(x) {
            *o = 2.0 * v;
        }
        Ok(())
    }
}

/// A plugin op that reuses a built-in op's name.
struct FakeRelu;

impl Op for FakeRelu {
    const NAME: &'static str = "relu";
    const SUMMARY: &'static str = "shadows the built-in relu";
    const INPUTS: &'static [Port] = &[];
    const OUTPUTS: &'static [Port] = &[];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn infer(_: &NoParams, _: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(Vec::new())
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Ok(())
    }
}

struct DoublePlugin;

impl Plugin for DoublePlugin {
    fn build(&self, r: &mut Registry) -> Result<(), RegistryError> {
        r.add::<Double>()?;
        Ok(())
    }
}

fn shadowing(r: &mut Registry) -> Result<(), RegistryError> {
    r.add::<FakeRelu>()?;
    Ok(())
}

/// Runs the CLI in-process: (exit code, stdout, stderr).
fn cli(args: &[&str], plugins: &[&dyn Plugin]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = std::iter::once("flowseg").chain(args.iter().copied());
    let code = run_cli(args, plugins, &mut out, &mut err);
    let s = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (code, s(out), s(err))
}

#[test]
fn plugin_op_is_listed() {
    let (code, out, err) = cli(&["ops"], &[&DoublePlugin]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(err.is_empty(), "{err}");
    for want in [
        "double_it — y = 2x element-wise (a test plugin's op)",
        "unused (optional)  f32, ignored (an optional input)",
        "y                  f32, the shape of `x`",
        "    op: double_it",
        // The built-ins are still there.
        "relu — ",
        "conv2d — ",
        "bias (optional)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let builtins = flowseg::registry(&[]).expect("built-in ops").iter().count();
    assert!(out.starts_with(&format!("{} ops.", builtins + 1)), "{out}");

    let (code, md, _) = cli(&["ops", "--markdown"], &[&DoublePlugin]);
    assert_eq!(code, ExitCode::SUCCESS);
    for want in [
        "| [`double_it`](#double_it) | y = 2x element-wise (a test plugin's op) |",
        "## `double_it`",
        "- `unused` (*optional*): f32, ignored (an optional input)",
        "```yaml\nname: twice\nop: double_it\ninputs: { x: conv.y }\n```",
    ] {
        assert!(md.contains(want), "missing {want:?} in\n{md}");
    }
    let (_, plain, _) = cli(&["ops"], &[]);
    assert!(!plain.contains("double_it"), "{plain}");
}

#[test]
fn duplicate_op_name_is_a_registration_error() {
    for args in [&["ops"][..], &["demo", "--iterations", "1"], &["--help"]] {
        let (code, out, err) = cli(args, &[&DoublePlugin, &shadowing]);
        assert_eq!(code, ExitCode::from(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains("op `relu` is registered twice"), "{err}");
    }
    let (code, _, err) = cli(&["ops"], &[&DoublePlugin, &DoublePlugin]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("op `double_it` is registered twice"), "{err}");
}

#[test]
fn usage_errors_and_help() {
    let (code, _, err) = cli(&["ops", "--bogus"], &[]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("--bogus"), "{err}");
    let (code, out, err) = cli(&[], &[]);
    assert_eq!(code, ExitCode::from(2), "a command is required");
    assert!(out.is_empty() && err.contains("Usage"), "{err}");
    let (code, out, err) = cli(&["--help"], &[]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        out.contains("ops") && out.contains("demo") && err.is_empty(),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "no styling off a terminal:\n{out}");
}

#[test]
fn a_closed_output_is_not_a_failure_but_other_write_errors_are() {
    struct Failing(std::io::ErrorKind);
    impl std::io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let args = ["flowseg", "ops"];
    let mut err = Vec::new();
    let code = run_cli(
        args,
        &[],
        &mut Failing(std::io::ErrorKind::BrokenPipe),
        &mut err,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let code = run_cli(args, &[], &mut Failing(std::io::ErrorKind::Other), &mut err);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(String::from_utf8_lossy(&err).contains("cannot write the output"));
}

#[test]
fn binary_lists_ops() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowseg"))
        .arg("ops")
        .output()
        .expect("run flowseg");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cross_entropy — "), "{text}");
}
