"""Imported first by every tool. `python tools/x.py` puts tools/ on the import path, not the project's root; this
puts the root there too, so that lib/ and the top-level modules import from any working folder. Not a script."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
