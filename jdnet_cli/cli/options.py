"""Options that several commands share, declared once so their names, help and parsing agree."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Weights = Annotated[Optional[Path], typer.Option("--weights", "-w", help="Weights file, or shipped weights by name: default, or heavy (for heavy rain). [default: default]")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Precision = Annotated[str, typer.Option("--precision", help="fp32, fp16 (CUDA) or bf16.")]
Tile = Annotated[str, typer.Option("--tile", help="Tile side in px: auto (largest that fits in memory), 0 (whole image or frame) or N.")]
TileOverlap = Annotated[
    Optional[int],
    typer.Option("--tile-overlap", help="Overlap between tiles in px (feathered, no seams). Default 32, or half of a smaller --tile."),
]
MaxMemory = Annotated[
    Optional[str],
    typer.Option("--max-memory", help="Memory budget for --tile auto, e.g. 4GB (default: free GPU memory, or a share of RAM on the CPU)."),
]
JsonEvents = Annotated[bool, typer.Option("--json", help="One JSON event per input on stdout, then a summary object.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only print errors (no progress, no summary).")]
Ensemble = Annotated[
    int,
    typer.Option("--ensemble", metavar="N", help="Average N flipped copies: 1 (off), 2 (+ mirrored) or 4 (+ upside down); N times slower."),
]
