"""Put src/ on the import path. A plain sys.path entry, not an editable
install: `dvc exp run --queue` runs stages in a copy of the repo, and they must
import that copy's code, not the workspace's."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
