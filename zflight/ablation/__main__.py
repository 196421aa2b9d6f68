"""``python -m zflight.ablation``: the first-layer ablation (see ``zflight.ablation``)."""

from zflight.ablation import main

raise SystemExit(main())
