"""`voiceline doctor` against the real lab Asterisk."""

import os
import subprocess

from conftest import ARI_PASSWORD, REPO


def _doctor(password: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ARI_PASSWORD=password, VOICELINE_PROVIDER="echo")
    env.pop("DEEPGRAM_API_KEY", None)
    return subprocess.run([str(REPO / ".venv/bin/voiceline"), "doctor", "--config", "config/ai-agent.yaml"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_doctor_passes_with_lab_credentials(asterisk):
    out = _doctor(ARI_PASSWORD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ok  ] ARI reachable" in out.stdout and "Asterisk 22." in out.stdout
    # a missing provider key is reported with its fix, but is not fatal for a non-default provider
    assert "[warn] provider deepgram: set DEEPGRAM_API_KEY" in out.stdout


def test_doctor_names_wrong_credentials_and_fix(asterisk):
    out = _doctor("wrong-password")
    assert out.returncode == 1
    assert "[FAIL] ARI reachable" in out.stdout and "401" in out.stdout
    assert "fix: check user 'voiceline' and ARI_PASSWORD against ari.conf" in out.stdout
