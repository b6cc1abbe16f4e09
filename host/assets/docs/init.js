// Plinth's /docs: Swagger UI over this host's own /openapi.json. Every file comes from
// the host (relative URLs, so a path prefix added by a proxy keeps working); nothing is
// fetched from anywhere else (validatorUrl: null keeps the badge from calling out).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
  });
});
