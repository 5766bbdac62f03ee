// Browser notifications for approvals: when an agent asks while this tab is in the background,
// the operator hears of it without watching the page. Permission is asked once per browser (the
// browser remembers the answer; we remember that we asked, so nobody is asked on every visit).
import { actionLabel } from './views/rules.js';

const ASKED_KEY = 'village.notificationsAsked';

function supported() {
  return typeof window.Notification === 'function';
}

/** 'granted', 'denied', 'default' (not answered yet) or 'unsupported'. */
export function notificationState() {
  return supported() ? Notification.permission : 'unsupported';
}

function asked() {
  try {
    return localStorage.getItem(ASKED_KEY) === 'true';
  } catch {
    return true;
  }
}

/**
 * Asks for permission. Browsers only show the prompt in answer to a click, so this is called
 * from one. Without `force` it asks only if this browser was never asked.
 */
export async function askPermission({ force = false } = {}) {
  if (!supported() || Notification.permission !== 'default') return notificationState();
  if (!force && asked()) return notificationState();
  try {
    localStorage.setItem(ASKED_KEY, 'true');
  } catch {
    // Private mode without storage: the browser still remembers the answer itself.
  }
  try {
    return await Notification.requestPermission();
  } catch {
    return notificationState();
  }
}

/** approvalId → the notification shown for it, closed once the approval is answered. */
const pending = new Map();

/** Shows a notification for an `approval_required` frame when the tab is not being looked at;
 *  clicking it brings the tab forward on the overview, where the approval can be answered.
 *  (A request the org's policy decides at once never comes as `approval_required`.) */
export function notifyApproval(frame, openOverview) {
  const approval = frame.approval || {};
  const id = approval.approvalId;
  if (!id || !document.hidden || notificationState() !== 'granted' || pending.has(id)) return;
  try {
    const note = new Notification(`Approval needed: ${actionLabel(approval.action)}`, {
      body: approval.description || '',
      tag: `village-approval-${id}`,
    });
    note.onclick = () => {
      window.focus();
      openOverview();
      note.close();
    };
    note.onclose = () => pending.delete(id);
    pending.set(id, { note });
  } catch (e) {
    // Some browsers only allow notifications from a service worker: nothing to show then.
    console.warn('notification not shown', e);
  }
}

/** An approval was answered (by a policy, a link or someone else): its notification is stale. */
export function approvalAnswered(approvalId) {
  const entry = pending.get(approvalId);
  if (!entry) return;
  pending.delete(approvalId);
  entry.note.close();
}
