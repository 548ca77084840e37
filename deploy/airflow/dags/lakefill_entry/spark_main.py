"""The Spark application (``--task train|run`` plus the job's fields as flags), spark-submit's file."""
from lakefill.pipelines.spark_job import main

raise SystemExit(main())
