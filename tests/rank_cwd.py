"""torchrun entry point for tests: run a stage script with cwd rank<RANK>/.

Each rank then writes into its own copy of the project, so a test can see
exactly which files each rank wrote.
"""
import os
import runpy
import sys
from pathlib import Path

os.chdir(f"rank{os.environ['RANK']}")
script = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(script.parent))
sys.argv = sys.argv[1:]
runpy.run_path(str(script), run_name="__main__")
