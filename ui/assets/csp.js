// The page's Content-Security-Policy allows `<style>` elements only with this response's
// nonce (see src/ui.rs). xterm.js creates such elements at run time for its theme and cell
// metrics, so every `<style>` element our own scripts create gets the nonce. Markup injected
// into the page cannot read it, so styles stay as strict as scripts.
const meta = document.querySelector('meta[name="csp-nonce"]');
const nonce = meta ? meta.content : '';
if (nonce && nonce !== '__CSP_NONCE__') {
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function createElementWithNonce(tag, options) {
    const element = createElement.call(this, tag, options);
    if (typeof tag === 'string' && tag.toLowerCase() === 'style') element.nonce = nonce;
    return element;
  };
}
meta?.remove();
