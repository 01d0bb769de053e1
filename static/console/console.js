/* Console progressive enhancement: every page works without this file.
   - [data-copy="#id"] buttons copy that element's text/value to the clipboard;
   - forms with data-confirm="question" ask before submitting (destructive actions);
   - htmx requests carry the CSRF token;
   - "Allow only the tools listed below" enables/disables its list. */
(function () {
  "use strict";

  function copyText(target) {
    var text = target.value !== undefined ? target.value : target.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      target.focus();
      if (target.select) { target.select(); }
      try { document.execCommand("copy") ? resolve() : reject(new Error("copy refused")); }
      catch (err) { reject(err); }
    });
  }

  function setupCopyButtons(root) {
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      var target = document.querySelector(button.getAttribute("data-copy"));
      if (!target) { return; }
      var status = button.closest(".secret-box") && button.closest(".secret-box").querySelector(".copy-status");
      button.hidden = false;
      button.addEventListener("click", function () {
        copyText(target).then(function () {
          button.textContent = "Copied";
          if (status) { status.textContent = "Copied to the clipboard."; }
        }, function () {
          if (target.select) { target.select(); }
          if (status) { status.textContent = "Copying is blocked here: the key is selected, press Ctrl+C (⌘C) to copy it."; }
        });
      });
    });
  }

  function setupConfirmations() {
    document.addEventListener("submit", function (event) {
      var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
      if (question && !window.confirm(question)) { event.preventDefault(); }
    });
  }

  function setupCsrfForHtmx() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    document.body.addEventListener("htmx:configRequest", function (event) {
      if (meta) { event.detail.headers["X-CSRFToken"] = meta.getAttribute("content"); }
    });
  }

  function setupToolAllowlist() {
    var toggle = document.getElementById("id_restrict_tools");
    var list = document.getElementById("id_tool_allowlist");
    if (!toggle || !list) { return; }
    var sync = function () { list.disabled = !toggle.checked; };
    toggle.addEventListener("change", sync);
    sync();
    // A disabled field is not submitted; re-enable it so the server keeps what was typed.
    toggle.form.addEventListener("submit", function () { list.disabled = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupCopyButtons(document);
    setupConfirmations();
    setupCsrfForHtmx();
    setupToolAllowlist();
  });
})();
