from gptoss_lab.cli import main

raise SystemExit(main())
