"""Where config bundles come from (SPEC §9): a bundle file, the config service's `GET /active`,
and the on-disk cache of the last good bundle. Adapters only: validation is `config.bundle`'s,
choosing and swapping bundles is the service's config watcher."""
