"""
Run the example DAGs on a distributed Airflow and check what they land: the production path.

Everything runs on this machine, lives under one temporary folder and is stopped afterwards by the
process ids this script started:

- PostgreSQL (Airflow's metadata DB, Celery's result backend, and apart the ``warehouse`` database
  of its own role, which the PostgreSQL DAG loads) and Redis (the Celery broker in database 0, the
  shared rate budget in database 1, behind a password), from Debian's packages, each with its own
  data folder and a Unix socket in it;
- an S3-compatible server (moto) and two Capillary stand-ins on 127.0.0.1: one for the mapped, daily
  and PostgreSQL DAGs, which answers 400 to the audit logs of one event, ``RetiredEvent``
  (``--fault http_400@RetiredEvent``), and the org's, with 300 events, a limit of 600 requests a
  minute (a leaky bucket of 5) and a log of every request it answers (``--request-log``);
- a third stand-in for the watch, whose history ends when it starts and which changes through its
  control endpoint (``POST /_control/changes``);
- Airflow with the CeleryExecutor: ``api-server`` (on 127.0.0.1), ``scheduler``, ``dag-processor``,
  ``triggerer`` and two ``celery worker`` processes. Each worker runs in its own UTS namespace, so
  it has a host name of its own, as on two machines. Only the workers get the connections, as
  environment variables (the triggerer, the watch's); the warehouse's is a ``postgres`` connection
  whose host is the socket's folder.

A server that can bind port 0 does so and names the port it got, and PostgreSQL and Redis listen on
Unix sockets, so no other process can take an address between its choice and its use. The one port
chosen before its server binds it is Redis's TCP port, for Airflow's Redis provider, which connects
over TCP only: the kernel names a free port, Redis is started again on another if that one was taken
meanwhile, and the server answering there must report the process id this script started.

Then it checks, through the REST API, the bucket and the files:

1. ``capillary_audit_mapped_s3``, triggered for one day: each event's object holds exactly the
   stand-in's rows of the window, each event once; every map index's manifest is complete; the mapped
   instances ran on both workers.
2. ``capillary_audit_daily``, backfilled over the three days before today: the three windows' rows
   are disjoint and together equal every row whose change falls in those days.
3. ``capillary_audit_org``, triggered for one day, on the org's stand-in with a connection of
   ``requests_per_minute=600`` and a shared rate budget in Redis: the listing task's 300 events in 6
   mapped groups of 50, on both workers; each event's object exactly the stand-in's rows; a complete
   manifest and one asset event per map index; the budget's key in Redis's database 1. From the
   stand-in's request log: each event asked once, no 429, and the span from the first audit-log
   request to the last within 1.15 times the floor the rate sets (299 intervals of 0.1 s, 29.9 s).
   Measured: 30.3 and 30.5 s, 1.015 and 1.021 times the floor, no gap between two requests longer
   than 0.25 s.
4. ``capillary_audit_to_postgres``, into the table ``capillary_audit_logs`` of the ``warehouse``
   database: two runs triggered for two adjacent days ([00:30, 00:30 the next day), as its schedule
   makes them), then the first run cleared through the REST API and so run again, then a run of the
   following day whose conf adds ``RetiredEvent`` to the four events. The table is read with psycopg2
   after each: after each day it holds, as a multiset, exactly the stand-in's rows of the four events
   from the first day's start to that day's end, none twice; each task's XCom summary names the rows
   it deleted and inserted, as the stand-in's data counts them. The rerun (try 2) deleted and
   inserted the first day's rows and left the table byte for byte as it was (``COPY`` of the sorted
   table). The run with ``RetiredEvent`` (which the org no longer lists) failed, once, before any
   audit-log request, with its log naming that event alone as not listed, and left
   the table byte for byte as it was although it would have added the third day's rows.
   Measured, in five runs: 649 and 646 rows a day, the rerun 649 deleted and 649 inserted, the
   failed run leaving the 1,295 rows (208,544 bytes) as they were; each run took 1.5 to 2.6 s from
   trigger (or clear) to its end, 0.2 to 0.6 s of it the task, but for one failed run of 6.3 s.
5. ``capillary_audit_watch`` (``watch.py``), the other DAGs paused and the scheduler restarted with
   ``use_job_schedule`` on: a change at the watch's stand-in starts one run within ``poll_interval`` +
   15 s with the change in its triggering asset event; a change made while the triggerer is stopped
   (SIGTERM) starts one run after it is started again; a third change one run more; three runs in all,
   each change in one, each run's file holding it, no secret in the triggerer's or the runs' logs.
6. The task logs of every run, the workers' logs and the org stand-in's request log hold no secret.
7. It prints the figures: run times, rows, instances per worker, the org's requests and pace, the
   PostgreSQL DAG's rows per day, its rerun's deletes and inserts and each of its runs' time.

Usage, from the repository's root: ``python3 -m scripts.system_test [--keep]`` (``make system-test``).
The first run installs what is missing: ``postgresql`` and ``redis-server`` with apt-get (as root),
and the virtual environment ``.venv-system/`` with :data:`scripts.system_test.install.INSTALL`.

The modules, in the order a run uses them:

- ``__main__``: the command line; re-runs itself inside ``.venv-system`` after ``install``;
- ``install``: the Debian packages and ``.venv-system`` (installs, checks nothing);
- ``runner``: one run, its phases and its teardown;
- ``services``: PostgreSQL (with the warehouse), Redis, moto and the stand-ins;
- ``cluster``: Airflow's processes, their configuration and its REST API;
- ``checks``: the four DAGs' runs, what they wrote and sent, the logs, and the figures printed at the end;
- ``watch``: the watch DAG's runs across a triggerer restart, and its figures;
- ``processes`` and ``common``: starting and stopping processes, waiting, errors, settings.

Every module imports only the standard library at its top: the command line runs first outside
``.venv-system``, before anything else is installed.
"""
