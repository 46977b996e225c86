// The console's shell: sign-in, navigation, language, and which page shows. Pages live in
// js/pages/ and are loaded when first opened: each exports render(root, ctx) and may return a
// function that stops what it started (timers, streams) when the page is left.

import { api, errorMessage, getKey, setKey } from "./api.js";
import { applyStrings, getLang, loadStrings, preferredLang, setLang, t } from "./i18n.js";
import { alertBox, field, h } from "./ui.js";

const PAGES = {
  playground: { strings: "playground", admin: false },
  account: { strings: "account", admin: false },
  admin: { strings: "admin", admin: true },
};

const state = { me: null, cleanup: null, rendering: 0 };

function route() {
  const [page = "", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page: PAGES[page] ? page : "playground", rest };
}

async function whoAmI() {
  state.me = await api("/v1/account");
  return state.me;
}

function renderNav() {
  const nav = document.getElementById("nav");
  const current = route().page;
  nav.replaceChildren(...Object.entries(PAGES)
    .filter(([, page]) => !page.admin || state.me?.is_admin)
    .map(([name]) => h("a", { href: `#/${name}`, i18n: `nav.${name}`,
      "aria-current": name === current ? "page" : null })));
  nav.hidden = false;
  document.getElementById("sign-out").hidden = false;
}

async function show() {
  const ticket = ++state.rendering;
  if (state.cleanup) {
    state.cleanup();
    state.cleanup = null;
  }
  const main = document.getElementById("main");
  if (!state.me) return showSignIn();
  const { page, rest } = route();
  if (PAGES[page].admin && !state.me.is_admin) {
    location.hash = "#/playground";
    return;
  }
  renderNav();
  try {
    await loadStrings(PAGES[page].strings);
    const module = await import(`./pages/${page}.js`);
    if (ticket !== state.rendering) return; // another page was asked for meanwhile
    const root = h("div", { class: `page page-${page}` });
    main.replaceChildren(root);
    document.title = `${t(`nav.${page}`)} · imagegate`;
    state.cleanup = (await module.render(root, {
      me: state.me, rest, refreshMe: whoAmI, navigate: (hash) => { location.hash = hash; },
    })) || null;
  } catch (err) {
    main.replaceChildren(alertBox(errorMessage(err)));
  }
}

function showSignIn() {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.title = `${t("signin.title")} · imagegate`;
  const input = h("input", { type: "password", name: "key", autocomplete: "off",
    spellcheck: "false", required: true, autofocus: true });
  const problem = h("div", { "aria-live": "assertive" });
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title",
    on: { submit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      setKey(input.value.trim());
      try {
        await whoAmI();
        if (!location.hash) location.hash = "#/playground";
        await show();
      } catch (err) {
        setKey(null);
        state.me = null;
        problem.replaceChildren(alertBox(errorMessage(err)));
        input.focus();
      }
    } } },
  h("h1", { id: "signin-title", i18n: "signin.title" }),
  h("p", { class: "muted", i18n: "signin.explain" }),
  field("signin.key", input, "signin.key_hint"),
  problem,
  h("button", { type: "submit", class: "primary", i18n: "signin.submit" }));
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

function signOut() {
  setKey(null);
  state.me = null;
  location.hash = "";
  show();
}

async function boot() {
  setLang(preferredLang());
  await loadStrings("shell");
  const picker = document.getElementById("lang");
  picker.value = getLang();
  picker.addEventListener("change", () => {
    setLang(picker.value);
    applyStrings();
    show();
  });
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", show);
  applyStrings();
  if (getKey()) {
    try {
      await whoAmI();
    } catch {
      setKey(null); // revoked or expired since: ask again
    }
  }
  await show();
}

boot();
