from lora_grader.classgrade.cli import main

raise SystemExit(main())
