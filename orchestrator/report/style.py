"""The HTML report's stylesheet, inlined so the file stands alone."""

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --accent: #0969da;
        --ok: #1a7f37; --okbg: #dafbe1; --warn: #9a6700; --warnbg: #fff8c5; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header .name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 22px; }
.goal { margin: 0 0 16px; font-size: 17px; color: var(--muted); }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin: 28px 0 12px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
section { margin-bottom: 8px; }
.outcome { border-radius: 6px; padding: 10px 16px; border: 1px solid var(--line); }
.outcome p { margin: 4px 0; }
.outcome.met { background: var(--okbg); border-color: var(--ok); }
.outcome.notmet { background: var(--warnbg); border-color: var(--warn); }
.outcome.none { background: #ffebe9; border-color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 8px 32px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
tbody tr:nth-child(even) { background: #fbfcfd; }
table.num td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.num td:last-child { white-space: normal; }
.layers { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
          color: var(--muted); overflow-wrap: anywhere; }
table.steps td:nth-child(-n+4) { white-space: nowrap; width: 1%; }
table.steps td:nth-child(5) { overflow-wrap: anywhere; }
.passed { color: var(--ok); }
.failed { color: var(--bad); }
.note, small, footer { color: var(--muted); }
.count { display: inline-block; min-width: 22px; padding: 0 7px; border-radius: 11px;
         background: var(--bg); border: 1px solid var(--line); font-size: 12px; text-align: center; }
figure { margin: 12px 0; text-align: center; }
figure.square img { max-width: 640px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 12px;
      overflow-x: auto; font-size: 13px; line-height: 1.45; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
details summary { cursor: pointer; color: var(--muted); }
ul { padding-left: 22px; }
li { margin: 3px 0; overflow-wrap: anywhere; }
footer { margin-top: 36px; font-size: 13px; border-top: 1px solid var(--line); padding-top: 8px; }
"""
