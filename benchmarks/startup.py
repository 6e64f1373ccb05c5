"""Start-up time of the command line and the package, against bare Python and `import torch`:

    python benchmarks/startup.py [--runs N] [--no-readme]

Median wall time over N fresh processes of each: `python -c pass`, `python -c "import torch"`,
`python -c "import sdlora"`, `sdlora --help` and `sdlora inspect FILE` (a small LoRA made in a temporary
folder). Prints a table and writes it to the "Start-up" section of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- startup:start -->", "<!-- startup:end -->"
MAKE_LORA = ("import sys, sdlora\nfrom sdlora.models.configs import DEFAULT_MODEL\nm = sdlora.open_model(DEFAULT_MODEL)\n"
             "net = sdlora.Network.create(m.components(), sdlora.NetworkConfig(algo='lora', rank=4))\n"
             "sdlora.save_adapter(net, sys.argv[1], m.family)\n")


def cases(lora: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "sdlora.cli"]
    return {"python -c pass": [sys.executable, "-c", "pass"],
            "python -c \"import torch\"": [sys.executable, "-c", "import torch"],
            "python -c \"import sdlora\"": [sys.executable, "-c", "import sdlora"],
            "sdlora --help": cli + ["--help"],
            "sdlora inspect FILE": cli + ["inspect", str(lora)]}


def median_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def table(figures: dict[str, float], runs: int) -> str:
    torch_ms = figures['python -c "import torch"']
    lines = [f"Median wall time of {runs} fresh processes each (`python benchmarks/startup.py`):", "",
             "| command | ms | / `import torch` |", "|---|---|---|"]
    lines += [f"| `{name}` | {ms:.0f} | {ms / torch_ms:.2f}× |" for name, ms in figures.items()]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = HERE / "README.md"
    body = readme.read_text()
    block = f"{START}\n{text}\n{END}"
    if START in body and END in body:
        head, rest = body.split(START, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n## Start-up\n\n" + block + "\n"
    readme.write_text(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="processes per command (default 7)")
    ap.add_argument("--no-readme", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lora = Path(tmp) / "small.safetensors"
        subprocess.run([sys.executable, "-c", MAKE_LORA, str(lora)], check=True)
        figures = {name: median_ms(cmd, args.runs) for name, cmd in cases(lora).items()}
    text = table(figures, args.runs)
    print(text)
    if not args.no_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
