/* A shared library that is no taphost plugin: it exports neither symbol. */
int some_other_function(void) { return 42; }
