"""`python tests/serve_split_tmp.py HTTP_TMP SCHED_TMP <serve flags>`: `sglang-mezo serve` whose HTTP
process keeps its temporary files in HTTP_TMP while the schedulers it spawns get TMPDIR=SCHED_TMP."""
import os
import sys
import tempfile

if __name__ == "__main__":
    http_tmp, sched_tmp = sys.argv[1:3]
    os.environ["TMPDIR"] = sched_tmp   # inherited by the processes SGLang spawns (schedulers, detokenizer)
    tempfile.tempdir = http_tmp        # this process only
    from sglang_mezo.serve.http import main

    sys.exit(main(sys.argv[3:]))
