#!/usr/bin/env python3
"""Prints every import cycle between files of the Rust crates under the given src/ folders
(`use crate::…`, `super::…` and paths into child modules; #[cfg(test)] modules left out) and
exits 1 when there is one. Usage: scripts/import-cycles.py src bench/src"""
import os, re, sys
def modfiles(root):
    files={}
    for d,_,fs in os.walk(root):
        for f in fs:
            if not f.endswith('.rs'): continue
            p=os.path.join(d,f); rel=os.path.relpath(p,root)[:-3].split(os.sep)
            if rel[-1]=='mod': rel=rel[:-1]
            if rel in (['lib'],['main']): rel=[]
            files[tuple(rel)]=p
    return files
def strip_tests(text):
    m=re.search(r'#\[cfg\(test\)\]\s*\n\s*mod \w+\s*\{', text)
    return text[:m.start()] if m else text
def resolve(files, path):
    for n in range(len(path),0,-1):
        if tuple(path[:n]) in files: return tuple(path[:n])
    return None
def graph(root):
    files=modfiles(root); g={}
    for mod,p in files.items():
        text=strip_tests(open(p).read())
        text=re.sub(r'//.*','',text)
        deps=set()
        for m in re.finditer(r'(?<!pub\()\b(crate|super)((?:::\w+)*)(?=::\{|::\*|[^:\w])', text):
            parts=[x for x in m.group(2).split('::') if x]
            if m.group(1)=='crate': base=[]
            else:
                base=list(mod)
                # file module: super is parent
                base=base[:-1]
                while parts and parts[0]=='super': base=base[:-1]; parts=parts[1:]
            t=resolve(files, base+parts)
            if t is not None and t!=mod and t!=():
                # a reference to a child module of mod is not a dependency cycle source
                deps.add(t)
        # bare paths into child modules (`aws::s3::X` in source/mod.rs), re-exports included
        for m in re.finditer(r'(?<![\w:])(\w+)((?:::\w+)+)', text):
            if m.group(1) in ('crate','super','self','std','core'): continue
            t=resolve(files, list(mod)+[m.group(1)]+m.group(2).split('::')[1:])
            if t is not None and t!=mod and len(t)>len(mod): deps.add(t)
        g[mod]=deps
    return g, files
def cycles(g):
    idx={}; low={}; st=[]; on=set(); out=[]; c=[0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v]=low[v]=c[0]; c[0]+=1; st.append(v); on.add(v)
        for w in g.get(v,()):
            if w not in idx: sc(w); low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop(); on.discard(w); comp.append(w)
                if w==v: break
            if len(comp)>1: out.append(comp)
    for v in g:
        if v not in idx: sc(v)
    return out
bad=0
for root in sys.argv[1:]:
    g,files=graph(root)
    for comp in cycles(g):
        bad+=1
        print(root, 'cycle:', ', '.join(files[m] for m in comp))
sys.exit(1 if bad else 0)
