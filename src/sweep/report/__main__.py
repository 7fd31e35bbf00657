"""``python -m sweep.report SWEEP_DIR [--out DIR]`` or ``--study NAME --storage STORAGE``."""

from sweep.report.entry import main

main()
