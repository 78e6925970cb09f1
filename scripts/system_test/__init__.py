"""
Run the example DAGs on a distributed Airflow and check what they land: the production path.

Everything runs on this machine, lives under one temporary folder and is stopped afterwards by the
process ids this script started. No port is picked in advance: a server that can bind port 0 does
so and names the port it got, and the others listen on Unix sockets, so no other process can take
an address between its choice and its use:

- PostgreSQL (Airflow's metadata DB and Celery's result backend) and Redis (the Celery broker), from
  Debian's packages, each with its own data folder and a Unix socket in it;
- an S3-compatible server (moto) and the Capillary stand-in, on 127.0.0.1;
- Airflow with the CeleryExecutor: ``api-server`` (on 127.0.0.1), ``scheduler``, ``dag-processor`` and two
  ``celery worker`` processes. Each worker runs in its own UTS namespace, so it has a host name of its
  own, as on two machines. Only the workers get the connections, as environment variables.

Then it checks, through the REST API, the bucket and the files:

1. ``capillary_audit_mapped_s3``, triggered for one day: each event's object holds exactly the
   stand-in's rows of the window, each event once; every map index's manifest is complete; the mapped
   instances ran on both workers; the task logs the workers wrote hold no secret.
2. ``capillary_audit_daily``, backfilled over the three days before today: the three windows' rows
   are disjoint and together equal every row whose change falls in those days.
3. It prints the figures: run times, rows, instances per worker.

Usage, from the repository's root: ``python3 -m scripts.system_test [--keep]`` (``make system-test``).
The first run installs what is missing: ``postgresql`` and ``redis-server`` with apt-get (as root),
and the virtual environment ``.venv-system/`` with :data:`scripts.system_test.install.INSTALL`.

The modules, in the order a run uses them:

- ``__main__``: the command line; re-runs itself inside ``.venv-system`` after ``install``;
- ``install``: the Debian packages and ``.venv-system`` (installs, checks nothing);
- ``runner``: one run, its phases and its teardown;
- ``services``: PostgreSQL, Redis, moto and the stand-in;
- ``cluster``: Airflow's processes, their configuration and its REST API;
- ``checks``: the two DAG runs, what they wrote, the workers' logs, and the figures printed at the end;
- ``processes`` and ``common``: starting and stopping processes, waiting, errors, settings.

Every module imports only the standard library at its top: the command line runs first outside
``.venv-system``, before anything else is installed.
"""
