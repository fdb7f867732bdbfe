"""Same as `python -m stream_r1 bench` (see stream_r1/bench.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_r1.bench import main  # noqa: E402

if __name__ == "__main__":
    main()
