from zflight.cli import main

raise SystemExit(main())
