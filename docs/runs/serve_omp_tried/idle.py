"""Idle CPU of a gapless server after one request, with and without OMP_WAIT_POLICY=ACTIVE."""
import json, os, subprocess, sys, time, urllib.request
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
for pol in ["default", "ACTIVE"]:
    env = dict(os.environ)
    if pol == "ACTIVE": env["OMP_WAIT_POLICY"] = "ACTIVE"
    p = subprocess.Popen([sys.executable, "-m", "gapless", "serve", "runs/m30k_de_en", "--port", "8093", "--dtype", "bf16"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try: urllib.request.urlopen("http://127.0.0.1:8093/health", timeout=1); break
        except Exception: time.sleep(0.5)
    req = urllib.request.Request("http://127.0.0.1:8093/v1/translate", data=json.dumps({"text": ["Ein Mann fährt Fahrrad."]*20, "beam": 5}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=60).read()
    time.sleep(1); c0 = cpu(p.pid); time.sleep(10); c1 = cpu(p.pid)
    print(pol, "idle CPU seconds over 10 s:", round(c1 - c0, 2))
    p.terminate(); p.wait()
