/**
 * completion: bash and zsh completion scripts generated from the command table, so every
 * subcommand, option and option value the parser knows is offered, and the controller argument
 * lists this machine's NVMe controllers (PCI class 010802h) and /dev/disnvmN nodes.
 */
import type { Command, OptionSpec } from "../cli.ts";

/** Every option of a command as the shell sees it: --name and -x. */
function words(c: Command): string[] {
  return [...Object.entries(c.options).flatMap(([n, o]) => [`--${n}`, ...(o.short ? [`-${o.short}`] : [])]), "--help", "-h"];
}

/** bash: `source <(libnvm completion bash)`, or save it in /etc/bash_completion.d/libnvm. */
export function bashCompletion(commands: readonly Command[]): string {
  const cases = commands
    .map((c) => {
      const values = Object.entries(c.options)
        .filter(([, o]) => o.type === "string" && o.complete !== undefined)
        .map(([n, o]) => {
          const pattern = [`--${n}`, ...(o.short ? [`-${o.short}`] : [])].join("|");
          const reply = o.complete === "file" ? `compgen -f -- "$cur"` : `compgen -W "${(o.complete as readonly string[]).join(" ")}" -- "$cur"`;
          return `        ${pattern}) COMPREPLY=($(${reply})); return ;;`;
        });
      const positional = c.positionals ? `compgen -W "${c.positionals.values.join(" ")}" -- "$cur"` : c.device ? `compgen -W "$(_libnvm_devices)" -- "$cur"` : "";
      return [
        `    ${c.name})`,
        `      opts="${words(c).join(" ")}"`,
        `      first="${positional.replaceAll('"', '\\"')}"`,
        ...(values.length ? [`      case "$opt" in`, ...values, `      esac`] : []),
        `      ;;`,
      ].join("\n");
    })
    .join("\n");
  return `# bash completion for libnvm: source <(libnvm completion bash)
_libnvm_devices() {
  local d
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class" 2>/dev/null)" = 0x010802 ] && echo "\${d##*/}"
  done
  for d in /dev/disnvm*; do
    [ -e "$d" ] && echo "$d"
  done
}

_libnvm() {
  local cur=\${COMP_WORDS[COMP_CWORD]} opt=\${COMP_WORDS[COMP_CWORD-1]} opts="" first=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${commands.map((c) => c.name).join(" ")} help --help --version" -- "$cur"))
    return
  fi
  # "--opt=value": bash splits at "=" (COMP_WORDBREAKS), so the option is two words back.
  if [ "$opt" = "=" ] && [ "$COMP_CWORD" -ge 3 ]; then
    opt=\${COMP_WORDS[COMP_CWORD-2]}
  elif [ "$cur" = "=" ]; then
    opt=\${COMP_WORDS[COMP_CWORD-1]}
    cur=""
  fi
  case "\${COMP_WORDS[1]}" in
${cases}
    help)
      COMPREPLY=($(compgen -W "${commands.map((c) => c.name).join(" ")}" -- "$cur"))
      return ;;
    *) return ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  elif [ "$COMP_CWORD" -eq 2 ] && [ -n "$first" ]; then
    COMPREPLY=($(eval "$first"))
  fi
}
complete -F _libnvm libnvm
`;
}

/** Text safe inside a zsh _arguments description ([...] with no brackets, colons or quotes). */
function zshText(s: string): string {
  return s.replace(/[[\]:'`\\]/g, " ").replace(/\s+/g, " ").trim();
}

function zshSpec(name: string, o: OptionSpec): string {
  const action = o.type === "boolean" ? "" : o.complete === "file" ? `:${o.value ?? "value"}:_files` : o.complete ? `:${o.value ?? "value"}:(${o.complete.join(" ")})` : `:${o.value ?? "value"}: `;
  const help = `[${zshText(o.help)}]`;
  if (!o.short) return `'--${name}${o.type === "string" ? "=" : ""}${help}${action}'`;
  const both = `(-${o.short} --${name})`;
  return `'${both}'{-${o.short}${o.type === "string" ? "+" : ""},--${name}${o.type === "string" ? "=" : ""}}'${help}${action}'`;
}

/** zsh: `source <(libnvm completion zsh)` after compinit, or save it as _libnvm in a directory of $fpath. */
export function zshCompletion(commands: readonly Command[]): string {
  const list = commands.map((c) => `    '${c.name}:${zshText(c.summary)}'`).join("\n");
  const cases = commands
    .map((c) => {
      const specs = Object.entries(c.options).map(([n, o]) => `        ${zshSpec(n, o)}`);
      specs.push(`        '(-h --help)'{-h,--help}'[this text]'`);
      if (c.positionals) specs.push(`        '1:${c.positionals.name}:(${c.positionals.values.join(" ")})'`);
      else if (c.device) specs.push(`        '1:controller:_libnvm_devices'`);
      if (c.passThrough) specs.push(`        '*::perf option: '`);
      return `    ${c.name})\n      _arguments -s \\\n${specs.join(" \\\n")}\n      ;;`;
    })
    .join("\n");
  return `#compdef libnvm
# zsh completion for libnvm: source <(libnvm completion zsh) after compinit

_libnvm_devices() {
  local -a devs
  local d
  for d in /sys/bus/pci/devices/*(N); do
    [[ "$(<$d/class)" == 0x010802 ]] && devs+=(\${d:t})
  done
  devs+=(/dev/disnvm*(N))
  compadd -a devs
}

_libnvm() {
  local -a commands
  commands=(
${list}
  )
  if (( CURRENT == 2 )); then
    _describe -t commands 'libnvm command' commands
    return
  fi
  local cmd=$words[2]
  shift words
  (( CURRENT-- ))
  case $cmd in
${cases}
    help)
      _describe -t commands 'libnvm command' commands
      ;;
  esac
}

if [[ "$funcstack[1]" == "_libnvm" ]]; then
  _libnvm "$@"
else
  compdef _libnvm libnvm
fi
`;
}
