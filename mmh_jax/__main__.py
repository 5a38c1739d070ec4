from mmh_jax.cli import main

raise SystemExit(main())
