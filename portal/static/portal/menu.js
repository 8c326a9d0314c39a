// The menu button on phones: shows and hides the navigation (portal/layout.css). Without this
// script the button stays hidden and the whole navigation is shown.
document.addEventListener("DOMContentLoaded", function () {
  var toggle = document.querySelector(".menu-toggle");
  if (toggle) {
    var header = toggle.closest("header");
    var menu = document.getElementById(toggle.getAttribute("aria-controls"));
    header.classList.add("collapsible");
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      var open = menu.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }
  // Filters whose choice is the whole question (Usage's "Show") apply when changed.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
});
