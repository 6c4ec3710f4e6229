"""Durable long-form and batch jobs (/v1/jobs, `python -m cosyvoice jobs`, the Jobs tab).

A job is an ordered list of lines written to a database (SQLite on one host, PostgreSQL when several
instances share the work) before the API answers. Workers in every instance claim lines under a lease,
voice them through the service (cosyvoice.jobs.voicing, the one adapter), and record each line's
result exactly once; a dead instance's leases expire and another instance takes its lines over.

    model.py     lines and how inputs (JSON, OpenAI Batch JSONL, .txt, .csv, .srt) become lines
    store.py     the database: tables, claims with leases, state changes (SQLAlchemy Core)
    voicing.py   the one place a line meets SynthesisService
    worker.py    claim → voice → fit to a slot → write the line file → record, with retries
    result.py    stitched audio, SRT/WebVTT subtitles, the zip
    router.py    the HTTP API
    cli.py       `python -m cosyvoice jobs …`
"""
