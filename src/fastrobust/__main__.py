"""``python -m fastrobust``, also the entry point under ``torchrun ... -m fastrobust train ...``."""

import os

from .cli import main

if "TORCHELASTIC_ERROR_FILE" in os.environ:   # under torchrun: its failure report shows an uncaught error's traceback
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

raise SystemExit(main())
