"""The homework's evidence as Markdown + PNG, without screenshots (`make report`).

    python -m clients.report --from docs/benchmarks/results.json --draft   # regenerates docs/benchmarks/README.md
    python -m clients.report --out build/report                            # from the live service

From a benchmark's results.json (tests/gpu/bench.py) or from the live service (model list, a chat
reply, the function-call check, the GPU report, model sizes on this host), it writes README.md with:
environment, model sizes (fp16 vs W4A16), GPU memory at serve time, a chat reply, the function-call
trace, the benchmark table, the targets with pass/fail, the planner's predicted KV blocks beside the
engine's, and PNG charts (matplotlib; skipped with a note when it is not installed). Sections that
failed are listed at the top; the exit code is 1 unless every section succeeded or `--draft` is given.

Parts: collect.py (live service -> results dict), render.py + report.md.j2 (results -> Markdown),
charts.py (PNGs), cli.py (arguments and exit codes).

Environment: KIT_SETTINGS, PROFILE (settings), OPENAI_BASE_URL / OPENAI_API_KEY (live mode).
"""
