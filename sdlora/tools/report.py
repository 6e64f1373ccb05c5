"""What a tool wrote and how far from exact it is: ``Report`` and its per-module ``ModuleFit``."""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field


@dataclass
class ModuleFit:
    name: str
    rank: int
    error: float  # ‖ΔW − ΔŴ‖_F (absolute)
    norm: float  # ‖ΔW‖_F

    @property
    def relative(self) -> float:
        return self.error / self.norm if self.norm > 0 else 0.0


@dataclass
class Report:
    """What a tool wrote and how far from exact it is."""

    action: str
    out: str
    modules: int = 0
    fits: list[ModuleFit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        """Overall ‖ΔW − ΔŴ‖/‖ΔW‖ over every fitted module: √(Σ errors² / Σ norms²)."""
        num = sum(f.error ** 2 for f in self.fits)
        den = sum(f.norm ** 2 for f in self.fits)
        return math.sqrt(num / den) if den > 0 else 0.0

    def worst(self, n: int = 5) -> list[ModuleFit]:
        return sorted(self.fits, key=lambda f: -f.relative)[:n]

    def ranks(self) -> dict[int, int]:
        return dict(sorted(collections.Counter(f.rank for f in self.fits).items()))

    def format(self) -> str:
        lines = [f"{self.action}: wrote {self.out} ({self.modules} modules)"]
        if self.fits:
            lines.append("ranks: " + ", ".join(f"{r} x{n}" for r, n in self.ranks().items()))
            lines.append(f"relative Frobenius error ‖ΔW − ΔŴ‖/‖ΔW‖: {self.relative_error:.3e} overall")
            for f in self.worst():
                lines.append(f"  {f.relative:.3e}  rank {f.rank:<4} {f.name}")
        lines += self.notes
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return dict(action=self.action, out=self.out, modules=self.modules, relative_error=self.relative_error,
                    ranks=self.ranks(), worst=[(f.name, f.rank, f.relative) for f in self.worst()],
                    notes=self.notes)

