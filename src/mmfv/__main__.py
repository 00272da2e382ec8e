from mmfv.cli import main

raise SystemExit(main())
