// Starts Swagger UI on /docs with this server's OpenAPI document. Kept out of
// the page so the Content-Security-Policy needs no inline script.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default would send the document to validator.swagger.io.
    validatorUrl: null,
  });
});
