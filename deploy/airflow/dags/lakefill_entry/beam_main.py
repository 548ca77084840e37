"""The Beam job (``--task=train|run`` plus the job's fields as flags), run by the pipeline environment's Python."""
from lakefill.pipelines.beam_pipeline import main

raise SystemExit(main())
