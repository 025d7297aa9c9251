"""`make demo`: run training.ipynb headless in quick mode and export it to HTML.

    python scripts/demo_notebook.py [--output-dir outputs] [--screenshot]

Writes, under the output folder: `training_executed.ipynb` (the notebook with its outputs),
`training_executed.html` (nbconvert), `loss_curve.png` (Cell 36), the exported Hugging Face
folder and binary weights, and with `--screenshot` a PNG of the HTML page rendered by
headless Chromium. Checkpoints go to `<output>/demo_checkpoints` and stay there, as a
user's Drive folder does: a second `make demo` finds the finished run, reports it instead
of training it again, and runs every later cell on it (`--fresh` empties the folder first).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def run_notebook(output_dir: Path, steps: int, fresh: bool = False) -> Path:
    import papermill

    checkpoint_dir = output_dir / "demo_checkpoints"
    if fresh:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    executed = output_dir / "training_executed.ipynb"
    papermill.execute_notebook(
        str(REPO_ROOT / "training.ipynb"), str(executed), cwd=str(REPO_ROOT),
        kernel_name="python3", progress_bar=True,
        parameters={"QUICK_MODE": True, "QUICK_MODE_STEPS": steps,
                    "CHECKPOINT_DIR": str(checkpoint_dir),
                    "OUTPUT_DIR": str(output_dir)},
    )
    return executed


def export_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def screenshot(html: Path, height: int = 4000) -> Path | None:
    """Render the HTML with headless Chromium (if installed) to check plots and reports."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no screenshot (apt-get install chromium)")
        return None
    png = html.with_suffix(".png")
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--screenshot={png}",
                    f"--window-size=1280,{height}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs", type=Path)
    parser.add_argument("--steps", type=int, default=120,
                        help="training steps of the tiny model (QUICK_MODE_STEPS)")
    parser.add_argument("--fresh", action="store_true",
                        help="empty the demo's checkpoint folder first (a new run)")
    parser.add_argument("--screenshot", action="store_true",
                        help="also render the HTML to PNG with headless Chromium")
    args = parser.parse_args(argv)
    output_dir = (REPO_ROOT / args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    executed = run_notebook(output_dir, args.steps, args.fresh)
    html = export_html(executed)
    png = screenshot(html) if args.screenshot else None
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  executed notebook: {executed}")
    print(f"  HTML export:       {html}")
    print(f"  loss curve:        {output_dir / 'loss_curve.png'}")
    if png:
        print(f"  screenshot:        {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
