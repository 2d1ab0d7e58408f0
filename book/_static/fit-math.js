// Display equations a little wider than the text column are shrunk to fit it (down to 75 %),
// so that they read whole; wider ones keep their size and scroll sideways (see course.css).
(function () {
  function fit() {
    document.querySelectorAll('mjx-container[display="true"]').forEach(function (eq) {
      eq.style.fontSize = "";
      var ratio = eq.clientWidth / eq.scrollWidth;
      if (ratio < 1 && ratio >= 0.75) {
        eq.style.fontSize = Math.floor(ratio * 98) + "%";
      }
    });
  }
  function whenTypeset() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(fit);
    } else {
      setTimeout(whenTypeset, 200);
    }
  }
  window.addEventListener("load", whenTypeset);
  var timer;
  window.addEventListener("resize", function () { clearTimeout(timer); timer = setTimeout(fit, 200); });
})();
