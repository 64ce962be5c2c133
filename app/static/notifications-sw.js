/*! notifications-sw.js: the service worker of notifications.js (registered by enablePush()).
 *
 * A Web Push message carries a notification's public JSON (app/channels/webpush.py): it is shown
 * with its title, content and link unless this browser showed that id already (the tab, hidden,
 * shows new notifications itself: both mark each id in one Cache Storage entry, so the same
 * notification is never shown twice). A click closes it and focuses an open tab of the service
 * (telling it which notification was clicked), or opens the notification's link, or the inbox.
 */
'use strict';

const SHOWN_CACHE = 'notifications-shown';   // shared with notifications.js

async function markShown(id) {
  const cache = await caches.open(SHOWN_CACHE);
  const key = '/__notifications_shown__/' + encodeURIComponent(id);
  if (await cache.match(key)) return false;
  await cache.put(key, new Response(String(Date.now())));
  return true;
}

function parse(event) {
  if (!event.data) return null;
  try {
    return event.data.json();
  } catch (err) {
    return {title: event.data.text()};
  }
}

async function unmark(id) {
  const cache = await caches.open(SHOWN_CACHE);
  await cache.delete('/__notifications_shown__/' + encodeURIComponent(id));
}

async function show(notification) {
  if (!notification) return;
  if (notification.id && !(await markShown(notification.id))) return;
  try {
    await self.registration.showNotification(notification.title || 'New notification', {
      body: notification.content || '',
      tag: notification.id || undefined,
      data: {id: notification.id || null, link_url: notification.link_url || null},
    });
  } catch (err) {
    // Not shown (no permission at this moment, the platform refused it): the id is free again, so
    // a later push or the tab may still show it.
    if (notification.id) await unmark(notification.id);
    throw err;
  }
}

async function focus(data) {
  const windows = await self.clients.matchAll({type: 'window', includeUncontrolled: true});
  const open = windows.find((client) => 'focus' in client);
  if (open) {
    open.postMessage({type: 'notificationclick', id: data.id});
    return open.focus();
  }
  const link = data.link_url && /^(https:\/\/|\/)/.test(data.link_url) ? data.link_url : '/inbox';
  return self.clients.openWindow(link);
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));
self.addEventListener('push', (event) => event.waitUntil(show(parse(event))));
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(focus(event.notification.data || {}));
});
