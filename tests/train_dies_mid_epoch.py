"""``python tests/train_dies_mid_epoch.py ...``: ``train.py`` whose step checkpoint raises right
after the first checkpoint written in the middle of epoch 2, as a kill would stop the run there
(every DDP rank: Lightning starts rank 1 by re-running this script). For test_resume_mid_epoch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import sweep.training.parts  # noqa: E402
from sweep.cli.train_command import main  # noqa: E402
from test_resume_mid_epoch import DiesAfterAMidEpochCheckpoint  # noqa: E402

if __name__ == "__main__":
    sweep.training.parts.StepCheckpoint = DiesAfterAMidEpochCheckpoint
    main()
