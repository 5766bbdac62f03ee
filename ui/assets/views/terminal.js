// An xterm.js terminal that fits its box and follows its size: the session's live terminal and
// the recording player's share it. `dispose()` stops following the box and frees the terminal.
import { Terminal } from '../../vendor/xterm/xterm.mjs';
import { FitAddon } from '../../vendor/addon-fit/addon-fit.mjs';

export function fittedTerminal(box, { input }) {
  const term = new Terminal({
    convertEol: true,
    disableStdin: !input,
    cursorBlink: input,
    scrollback: 10000,
    fontSize: 13,
    fontFamily: 'ui-monospace, SFMono-Regular, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    theme: { background: '#0d1117', foreground: '#e6edf3', cursor: '#e6edf3' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  const refit = () => {
    try {
      fit.fit();
    } catch {
      // Not laid out yet (hidden or zero-sized): the next resize fits it.
    }
  };
  refit();
  const resize = new ResizeObserver(() => refit());
  resize.observe(box);
  return {
    term,
    dispose() {
      resize.disconnect();
      term.dispose();
    },
  };
}
