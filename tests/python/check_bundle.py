"""Checks every graph of a bundle with the official ONNX checker and loads it in ONNX Runtime.

Usage: check_bundle.py BUNDLE. Prints JSON {file: {"checker": "ok" | error, "ort": "ok" | error,
"inputs": [...], "outputs": [...], "opset": n, "ir_version": n, "nodes": n}}.
"""
import json, os, sys
import onnx
import onnxruntime as ort

bundle = sys.argv[1]
res = {}
for f in sorted(os.listdir(bundle)):
    if not f.endswith(".onnx"):
        continue
    p = os.path.join(bundle, f)
    r = {}
    m = onnx.load(p)
    try:
        onnx.checker.check_model(m, full_check=True)
        r["checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - report any checker failure
        r["checker"] = str(e)
    try:
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        r["ort"] = "ok"
        r["inputs"] = [[i.name, [str(d) for d in i.shape]] for i in s.get_inputs()]
        r["outputs"] = [[o.name, [str(d) for d in o.shape]] for o in s.get_outputs()]
    except Exception as e:  # noqa: BLE001
        r["ort"] = str(e)
    r["opset"] = m.opset_import[0].version
    r["ir_version"] = m.ir_version
    r["nodes"] = len(m.graph.node)
    r["node_names_unique"] = len({n.name for n in m.graph.node}) == len(m.graph.node)
    res[f] = r
print(json.dumps(res))
