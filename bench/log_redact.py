# Cost of log redaction per line on MicroPython: firmware.log.redact (span union) against the
# earlier replace-in-a-loop version as the baseline, in the same run, on the same lines.
# Run: MICROPYPATH=.:host_tests/shims:lib .venv/bin/micropython bench/log_redact.py [N]
import sys
from time import ticks_diff, ticks_us

from firmware import log

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
SECRETS = ["cs-0123456789abcdef0123", "Y2R2X2NsaWVudDpjcy0wMTIzNDU2Nzg5YWJj",
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl", "wifi-pass-42",
           "ak-9f8e7d6c5b4a"]
LINES = {
    "no secret": "12345.678 I status: readings=120 delivered=118 pending=2 dead=0 free=51200",
    "one secret": "12345.678 W app: auth: RealerError(token request refused: 401 bad "
                  "Basic Y2R2X2NsaWVudDpjcy0wMTIzNDU2Nzg5YWJj)",
    "traceback": "Traceback (most recent call last):\n  File \"firmware/app.py\", line 120, "
                 "in auth\n  File \"firmware/clouds/realer_https.py\", line 131, in "
                 "_token_request\nRealerError: refused cs-0123456789abcdef0123\n",
}


def baseline(text, secrets):
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def per_line_us(fn, text):
    t0 = ticks_us()
    for _ in range(N):
        fn(text)
    return ticks_diff(ticks_us(), t0) / N


def main():
    for s in SECRETS:
        log.secret(s)
    old = sorted(SECRETS, key=len, reverse=True)
    print("secrets registered: %d (forms: %d), lines x %d" % (len(SECRETS), len(log._secrets),
                                                          N))
    print("| line | baseline us | redact us | ratio |")
    print("|---|---|---|---|")
    for name, text in LINES.items():
        if baseline(text, old) != log.redact(text):
            raise SystemExit("outputs differ for %s" % name)
        b = per_line_us(lambda t: baseline(t, old), text)
        r = per_line_us(lambda t: log.redact(t), text)  # same call overhead as baseline
        print("| %s | %.2f | %.2f | %.2fx |" % (name, b, r, r / b))


main()
