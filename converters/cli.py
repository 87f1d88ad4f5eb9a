"""`edgeops build`: turn a model into a validated bundle for a hardware profile.

Heavy dependencies (torch, onnx, onnxruntime, LiteRT) are imported by the pipeline inside
functions, so loading this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import sys

import click

from edgeops.profiles import QUANT_CHOICES


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise click.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from e


@click.command("build")
@click.argument("model")
@click.option("--profile", "-p", required=True, help="hardware profile name (see `edgeops profiles list`) or path to a profile .toml")
@click.option("--name", required=True, help="model name recorded in the manifest")
@click.option("--version", "version", required=True, help="model version recorded in the manifest")
@click.option("--release", type=int, default=1, show_default=True, help="monotonic release counter (devices refuse a lower one)")
@click.option("--calibration", type=click.Path(), help="calibration data: .npy, .npz keyed by input name (samples on axis 0, or a leading sample axis before each input's shape), a folder of .npz feeds, or a folder of images")
@click.option("--validation", type=click.Path(), help="held-out validation data (.npz key 'labels' enables accuracy)")
@click.option("--quantize", type=click.Choice(QUANT_CHOICES), default="auto", show_default=True, help="quantization scheme; auto picks per profile and model")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), help="activation range estimation (default: the profile's)")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...", help="fix an input's shape (repeatable); without it, open dims are fixed from the calibration/validation data")
@click.option("--image-size", help="image folders: H,W to resize to (default: the model input's)")
@click.option("--image-mean", help="image folders: per-channel mean after scaling to [0,1], e.g. 0.485,0.456,0.406")
@click.option("--image-std", help="image folders: per-channel std, e.g. 0.229,0.224,0.225")
@click.option("--image-layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True, help="image folders: tensor layout")
@click.option("--max-accuracy-drop", type=float, help="gate: largest top-1 accuracy drop in points (default: profile budget)")
@click.option("--max-size-mb", type=float, help="gate: largest bundle size in MB (default: profile budget)")
@click.option("--min-agreement", type=float, help="gate: least top-1 agreement with the original, 0..1 (default: profile budget)")
@click.option("--min-cosine", type=float, help="gate: least mean cosine similarity per output (default: profile budget)")
@click.option("--allow-gate-failures", is_flag=True, help="write the bundle even if gates fail (report status 'gates_failed')")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout (progress goes to stderr)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="bundle file to write")
def build(model, profile, name, version, release, calibration, validation, quantize, calibration_method, input_shapes, image_size,
          image_mean, image_std, image_layout, max_accuracy_drop, max_size_mb, min_agreement, min_cosine, allow_gate_failures, as_json, output):
    """Build MODEL (ONNX, .tflite, TorchScript .pt, ExportedProgram .pt2 or module:factory) into a bundle for a profile.

    Validates the built model against the original in the real runtime, fails on a broken gate
    (exit code 5) unless --allow-gate-failures, and writes one deterministic bundle file.
    """
    from rich.console import Console

    from edgeops.converters.data import ImageOptions
    from edgeops.converters.pipeline import BuildOptions, build as run_build, parse_input_shape
    from edgeops.errors import ConfigError

    shapes = dict(parse_input_shape(s) for s in input_shapes)
    image_kwargs = {"layout": image_layout}
    size = _floats(image_size, "--image-size")
    if size is not None:
        if len(size) != 2:
            raise click.BadParameter("--image-size takes H,W")
        image_kwargs["size"] = (int(size[0]), int(size[1]))
    for key, text, flag in (("mean", image_mean, "--image-mean"), ("std", image_std, "--image-std")):
        if (vals := _floats(text, flag)) is not None:
            image_kwargs[key] = vals
    try:
        image = ImageOptions(**image_kwargs)
    except ValueError as e:
        raise ConfigError(f"image options: {e}") from e
    options = BuildOptions.parse(
        model=model, profile=profile, name=name, version=version, release=release, output=output, calibration=calibration,
        validation=validation, quantize=quantize, calibration_method=calibration_method, input_shapes=shapes,
        max_accuracy_drop=max_accuracy_drop, max_size_mb=max_size_mb, min_agreement=min_agreement, min_cosine=min_cosine,
        allow_gate_failures=allow_gate_failures, image=image,
    )
    err = Console(stderr=True)
    # Converters (torch.onnx, litert-torch) print progress on stdout: keep stdout for our output.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_build(options, step=_progress_step(err))
    if as_json:
        click.echo(json.dumps(result_document(result), indent=2, sort_keys=True))
    else:
        print_result(result, Console())


def result_document(result) -> dict:
    """The --json output: bundle path, manifest, report, host latency."""
    return {
        "bundle": str(result.path) if result.path else None,
        "gates_passed": result.gates_passed,
        "manifest": result.manifest.to_dict(),
        "report": result.report,
        "host_latency": result.host_latency,
    }


def _progress_step(console):
    """A step(text) context manager that shows a spinner and the elapsed time on stderr."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def step(text: str):
        if not console.is_terminal:
            console.print(f"[dim]… {text}[/dim]")
            yield
            return
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task(text, total=1)
            yield
            progress.update(task, completed=1)

    return step


def print_result(result, console) -> None:
    """Human output: the choice and why, the validation table, gates, latency and warnings."""
    from rich.markup import escape
    from rich.table import Table

    r = result.report
    q = r["quantization"]
    console.print(f"[bold]quantization:[/bold] {q['scheme']} — {escape(q['reason'])}")
    for line in r["passes"]:
        console.print(f"  [dim]{escape(line)}[/dim]")
    m = r["metrics"]
    table = Table(title=f"validation on {r['data']['validation']['source']} ({m['feeds']} feeds)")
    table.add_column("metric")
    table.add_column("original", justify="right")
    table.add_column("built", justify="right")
    if "accuracy_original" in m:
        table.add_row("top-1 accuracy", f"{m['accuracy_original']:.2%}", f"{m['accuracy_built']:.2%}")
        table.add_row("accuracy drop", "", f"{m['accuracy_drop_points']:.2f} points")
    if "top1_agreement" in m:
        table.add_row("top-1 agreement", "", f"{m['top1_agreement']:.2%}")
    for name, o in m["outputs"].items():
        table.add_row(escape(f"cosine [{name}] mean / min"), "", f"{o['cosine_mean']:.5f} / {o['cosine_min']:.5f}" if o["cosine_mean"] is not None else "-")
        table.add_row(escape(f"max abs error [{name}]"), "", f"{o['max_abs_error']:.4g}")
    lat = result.host_latency
    table.add_row(f"host latency p50 ({lat['threads']} thr)", f"{lat['original']['p50_ms']:.3f} ms", f"{lat['built']['p50_ms']:.3f} ms")
    table.add_row(f"host latency p95 ({lat['threads']} thr)", f"{lat['original']['p95_ms']:.3f} ms", f"{lat['built']['p95_ms']:.3f} ms")
    s = r["size"]
    table.add_row("model size", f"{s['original_bytes'] / 1e6:.3f} MB", f"{s['built_bytes'] / 1e6:.3f} MB ({s['ratio']:.2f}x)")
    console.print(table)
    gates = Table(title="gates")
    for col in ("gate", "value", "limit", "result"):
        gates.add_column(col)
    for g in r["gates"]:
        gates.add_row(escape(g["gate"]), str(g["value"]), str(g["limit"]), "[green]pass[/green]" if g["passed"] else "[red]FAIL[/red]")
    console.print(gates)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if result.path:
        console.print(f"[bold green]bundle[/bold green] {result.path}  {result.manifest.name} {result.manifest.version} release {result.manifest.release}")
