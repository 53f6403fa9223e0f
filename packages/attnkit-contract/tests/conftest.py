import sys
from pathlib import Path

# badspecs.py sits beside the tests; pytester runs in a temporary directory and imports it too.
sys.path.insert(0, str(Path(__file__).parent))
