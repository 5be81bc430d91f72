"""sglang.Engine(tp_size=2) + EngineTrainer in a fresh process (2 CPU ranks):
`python tests/engine_tp_check.py MODEL_DIR SAVE_DIR` steps twice, saves, prints one JSON line."""
import json
import os
import sys

if __name__ == "__main__":
    from sglang_mezo import cpu_shims

    cpu_shims.install()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per rank (SGLang refuses TP 2 on 1 NUMA node)
    import sglang

    from sglang_mezo.serve import EngineTrainer

    engine = sglang.Engine(model_path=sys.argv[1], device="cpu", attention_backend="torch_native", tp_size=2,
                           dtype="float32", max_total_tokens=4096, disable_cuda_graph=True,
                           sleep_on_idle=True, log_level="error")
    try:
        t = EngineTrainer(engine)
        ex = [{"prompt": "good fun It was", "candidates": [" terrible", " great"], "label": 1},
              {"prompt": "awful plot It was", "candidates": [" terrible", " great"], "label": 0}]
        steps = [t.step(examples=ex, lr=1e-2, eps=1e-2, seed=s) for s in range(2)]
        print(json.dumps({"steps": [s["step"] for s in steps], "saved": t.save(sys.argv[2])}))
    finally:
        engine.shutdown()
